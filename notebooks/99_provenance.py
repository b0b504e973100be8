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
# # About this build
#
# Every chapter of this book is a notebook that `xrg book run` executed headlessly with
# papermill, with the parameters of one profile. Each notebook recorded, when it finished,
# the code version, profile, parameters, device, seed and its wall time; this page gathers
# those records into one table (the {doc}`intro <../intro>` shows it too). A notebook that
# was up to date was not executed again, so its row keeps the time it was executed.

# %% tags=["parameters"]
# Run
profile: str = "tiny"  # profile the book was executed with
data_dir: str = "../data/tiny"  # data directory written by `xrg data build`
executed_dir: str = "../book/executed"  # folder of the executed notebooks
seed: int = 0  # global seed

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from xrg.data.build import read_build_record
from xrg.notebook import check_params, executed_provenance, setup

run = setup(seed=seed, profile=profile, params=dict(data_dir=data_dir, executed_dir=executed_dir), show=False)
check_params(data_dir=(data_dir, "existing_dir"), executed_dir=(executed_dir, "existing_dir"))
rows = executed_provenance(executed_dir, exclude=("99_provenance",))
build = read_build_record(data_dir)

# %% [markdown]
# ## The run

# %% tags=["hide-input"]
# Wall time: papermill's, kernel start and imports included; else what the notebook measured.
table = pd.DataFrame(
    [
        {
            "notebook": row["notebook"],
            "profile": row["profile"],
            "seed": row["seed"],
            "device": row["device"],
            "code version": row["code_version"],
            "executed": str(row["started"])[:16],
            "wall time (s)": round(float(row["papermill_seconds"] or row["wall_seconds"] or 0.0), 1),
        }
        for row in rows
    ]
).set_index("notebook")
versions = sorted({row["code_version"] for row in rows})
devices = sorted({row["device"] for row in rows})
total_minutes = float(table["wall time (s)"].sum()) / 60
glue("run_table", table, display=False)
glue("run_profile", ", ".join(sorted({str(row["profile"]) for row in rows})), display=False)
glue("run_code_versions", ", ".join(versions), display=False)
glue("run_devices", ", ".join(devices), display=False)
glue("run_total_minutes", total_minutes, display=False)
glue("run_num_notebooks", len(rows), display=False)
glue("run_num_cases", int(build["n_cases"]), display=False)
table

# %% [markdown]
# The data: {glue:text}`run_num_cases` report/image pairs rendered by the phantom; the
# notebooks together ran for {glue:text}`run_total_minutes:.1f` minutes. Where a row's
# code version differs from the others, that chapter was executed from another commit:
# re-run `xrg book run` to bring it up to date.

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(7, 0.35 * len(table) + 1))
ax.barh(table.index[::-1], table["wall time (s)"][::-1], color="tab:blue")
ax.set_xlabel("wall time (s)")
ax.set_title("Time per notebook")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Chapters and parameters

# %% tags=["hide-input"]
display(
    Markdown(
        "\n".join(
            f"- **{row['notebook']}** ({row['title']}): "
            + ", ".join(f"`{key}={value!r}`" for key, value in row["params"].items())
            for row in rows
        )
    )
)
missing = [row["notebook"] for row in rows if not row["recorded"]]
if missing:
    display(Markdown(f"*No provenance recorded by: {', '.join(missing)}.*"))
build_table = pd.DataFrame({"value": [str(v) for v in build["config"].values()]}, index=list(build["config"]))
build_table
