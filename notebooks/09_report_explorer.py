# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The report explorer: edit a report, watch the radiograph change
#
# A teaching app over the profile's trained XRayGAN. A learner types a report, or picks one
# of the held-out test reports, and sees four images side by side: XRayGAN's frontal and
# lateral views, and the CT phantom's rendering of the same report's findings into a fixed
# synthetic patient, which is the ground truth the model learned to imitate. Under them, the
# report as the hierarchical encoder weighed it (§2.1): each word shaded by its word weight
# times its sentence's weight, with a bar per sentence. For every finding the labeller
# detects there are buttons that rewrite the report and regenerate: **negate** it, make it
# **milder** or **more severe**, **flip** it to the other side, or **make present** a
# finding the report rules out. The noise seed and the phantom patient stay fixed, so the
# only thing that changes between two pictures is the edit, in the ground truth and, as far
# as the model learned, in the generated pair.
#
# The app runs live in JupyterLab (it needs a Python kernel: every click calls the model).
# In the static book the widgets show the state they were left in when the notebook was
# executed, and the figures further down are snapshots of the same app driven from code.

# %% tags=["parameters"]
# Run
profile: str = "tiny"  # profile of the XRayGAN run
data_dir: str = "../data/tiny"  # data directory written by `xrg data build` (its test split is offered)
run_dir: str = "../runs/tiny/xraygan"  # XRayGAN run directory (trained here when missing)
seed: int = 0  # global seed; also XRayGAN's noise seed in the explorer
# Explorer
report_id: str = ""  # test report the app opens with ("": the first offering the most kinds of edit)
typed_report: str = "FINDINGS: The heart is mildly enlarged. Small left pleural effusion. No pneumothorax.\nIMPRESSION: Mild cardiomegaly and small left effusion."  # a report typed by hand, the second example
typed_patient: int = 7  # phantom patient seed of the typed report
max_choices: int = 300  # test reports offered in the app's dropdown
image_width: int = 192  # display width of each image panel (pixels)
timing_repeats: int = 3  # times each response of the two examples is timed

# %% tags=["hide-input"]

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from xrg.data.phantom import PhantomRenderer, volume_size_for
from xrg.explorer import (
    ExplorerApp,
    ReportExplorer,
    load_report_choices,
    one_of_each,
    pick_report,
    plot_snapshots,
    snapshot_rows,
    snapshot_table,
    time_responses,
    toggles,
)
from xrg.notebook import check_params, setup
from xrg.pipelines import XRayGANPipeline
from xrg.train.runs import ensure_xraygan_run

run = setup(
    seed=seed,
    profile=profile,
    params=dict(
        data_dir=data_dir,
        run_dir=run_dir,
        report_id=report_id,
        typed_report=typed_report,
        typed_patient=typed_patient,
        max_choices=max_choices,
        image_width=image_width,
        timing_repeats=timing_repeats,
    ),
)
check_params(
    data_dir=(data_dir, "existing_dir"),
    run_dir=(run_dir, str),
    report_id=(report_id, str),
    typed_report=(typed_report, str),
    typed_patient=(typed_patient, range(0, 2**31)),
    max_choices=(max_choices, range(1, 100_000)),
    image_width=(image_width, range(32, 1025)),
    timing_repeats=(timing_repeats, range(1, 101)),
)
checkpoint = ensure_xraygan_run(profile, data_dir, run_dir, device="cpu")
pipe = XRayGANPipeline.from_checkpoint(checkpoint)
renderer = PhantomRenderer(volume_size_for(pipe.image_size))
explorer = ReportExplorer(pipe, renderer, seed=seed)
explorer.warmup()
choices = load_report_choices(data_dir, split="test", limit=max_choices)
opening = pick_report(choices, report_id)
pipe

# %% [markdown]
# ## The app
#
# From the top: the test-report picker and the text box (type anything and press
# **Generate**), Undo and Original, the status line with the response time, one row of edit
# buttons per detected finding, the four images (model left, phantom truth right), and the
# attention and findings panels. The findings panel lists what the labeller read, and after
# an edit the sentences it rewrote (old struck through, new underlined). Words the model's
# vocabulary does not know are underlined with dots: the encoder reads them as `<unk>`.

# %%
app = ExplorerApp(explorer, choices, image_width=image_width)
app.pick(opening.id)
display(app.widget)

# %% [markdown]
# ## Snapshots: one edit at a time
#
# The same app driven from code. Each row applies one edit to the report as it was opened
# (then undoes it): the first row is the report itself, the others one button each, with
# the sentences the edit rewrote (shortened; the app's findings panel lists them whole).
# Compare the phantom columns, where the edit is drawn exactly, with the XRayGAN columns,
# where it shows only as far as training taught the model to read that wording. First the
# test report the app opened with, then a report typed by hand.

# %% tags=["hide-input"]
opened = app.explorer.view
display(
    Markdown(
        f"**Test report {opening.id}** (phantom patient {opened.patient_seed}):\n\n> "
        + opening.text.replace("\n", "\n>\n> ")
    )
)
test_rows = snapshot_rows(app.apply, app.undo, opened)
plot_snapshots(test_rows, f"test report {opening.id}")
plt.show()
snapshot_table(test_rows)

# %% tags=["hide-input"]
typed = ReportExplorer(pipe, renderer, seed=seed)  # a second explorer: the app above keeps its report
typed_view = typed.generate(typed_report, patient_seed=typed_patient)
display(Markdown(f"**Typed report** (phantom patient {typed_patient}):\n\n> " + typed_report.replace("\n", "\n>\n> ")))
typed_rows = snapshot_rows(typed.edit, typed.undo, typed_view)
plot_snapshots(typed_rows, "a typed report")
plt.show()
snapshot_table(typed_rows)

# %% [markdown]
# ## How fast it answers
#
# Every response regenerates the pair and re-renders the phantom truth at the run's
# resolution on the CPU: labelling the report and making the edit take about a
# millisecond, XRayGAN some tens of milliseconds, the phantom the rest. The table times
# each kind of response over the two reports above.

# %% tags=["hide-input"]
timer = ReportExplorer(pipe, renderer, seed=seed)
times, failed = time_responses(
    timer, [(opening.text, opening.patient_seed), (typed_report, typed_patient)], repeats=timing_repeats
)
timing = (
    pd.DataFrame(
        [
            {"response": action, "n": len(values), "median s": np.median(values), "p90 s": np.percentile(values, 90)}
            for action, values in times.items()
            if values
        ]
    )
    .set_index("response")
    .round(3)
)
all_times = [t for values in times.values() for t in values]
glue("explorer_response_s", float(np.median(all_times)), display=False)
glue("explorer_response_p90_s", float(np.percentile(all_times, 90)), display=False)
glue("explorer_num_edits", len(toggles(opened)), display=False)
glue("explorer_image_size", pipe.image_size, display=False)
display(
    Markdown(
        f"Median response {np.median(all_times):.2f} s (p90 {np.percentile(all_times, 90):.2f} s) at "
        f"{pipe.image_size}², over {len(all_times)} responses; the opening report has "
        f"{len(toggles(opened))} edit buttons" + (f"; {failed} listed edit(s) failed verification." if failed else ".")
    )
)
timing

# %% [markdown]
# The app above is left with the opening report's first edit applied, so the saved page
# shows an edit in the findings panel; in JupyterLab, **Undo edit** or **Original** goes
# back.

# %% tags=["hide-input"]
first_edit = one_of_each(app.explorer.view)
if first_edit:
    app.apply(*first_edit[0].edit)
display(Markdown(f"*App state: {app.status.value}*"))

# %% tags=["remove-input"]
# Provenance: wall time of this notebook, recorded for the book's run table.
run.finish()
