"""Structured chest X-ray findings: one schema and two sources for it.

The schema (:class:`Finding`) is what the phantom renderer draws, what the dataset turns
into multi-hot labels and what evaluation scores against. It is filled from

* the MeSH ``<major>`` tags that Open-i curators attached to each report
  (``Opacity/lung/upper lobe/right``, ``Cardiomegaly/mild``, ``normal`` ...), and
* a rule-based labeller for free report text with negation handling, so that a report a
  user types ("No pleural effusion. Mild cardiomegaly.") yields findings too.

:func:`mesh_to_findings` and :func:`label_text` are the two sources, :func:`agreement` and
:func:`openi_agreement` measure how well they agree (``python -m xrg.data.findings`` prints
the table for all Open-i reports), and :func:`describe_findings` writes findings back as a
short report that :func:`label_text` reads to the same findings.

The package's modules, each re-exported here:

* :mod:`~xrg.data.findings.schema`: finding kinds, sides, zones, severities, :class:`Finding`,
  :data:`KIND_ATTRIBUTES` and :func:`merge_findings`;
* :mod:`~xrg.data.findings.mesh`: source 1, Open-i MeSH majors (:func:`mesh_to_findings`);
* :mod:`~xrg.data.findings.labeller`: source 2, the free-text labeller (:func:`label_text`);
* :mod:`~xrg.data.findings.agreement`: agreement of two sources (:func:`agreement`,
  :func:`openi_agreement`);
* :mod:`~xrg.data.findings.descriptions`: text from findings (:func:`describe_findings`);
* :mod:`~xrg.data.findings.reconcile`: MeSH findings corrected by the text: its sides and the
  sternotomy wires it mentions (:func:`text_corrections`, :func:`side_disagreements`).
"""

from __future__ import annotations

from xrg.data.findings.agreement import agreement, openi_agreement
from xrg.data.findings.descriptions import describe_findings
from xrg.data.findings.labeller import (
    HYPOTHETICAL,
    HYPOTHETICAL_TERMINATORS,
    IMPLIED_BY_MENTION,
    LUNG_CONTEXT,
    NEGATION_POST,
    NEGATION_PRE,
    NEGATION_PSEUDO,
    NEGATION_TERMINATORS,
    NEGATION_WINDOW,
    NON_LUNG_CONTEXT,
    SEVERITY_WORDS,
    SIDE_WORDS,
    TEXT_ABSENCES,
    TEXT_NOT_FINDINGS,
    TEXT_RECLASSIFY,
    TEXT_STATEMENTS,
    TEXT_SYNONYMS,
    ZONE_WORDS,
    label_text,
)
from xrg.data.findings.mesh import (
    MESH_CALCIFIED_PARTNER_HEADS,
    MESH_IMPLIED_SIDES,
    MESH_NO_FINDING,
    MESH_RULES,
    MESH_SEVERITIES,
    MESH_SIDES,
    MESH_ZONES,
    NON_LUNG_SITES,
    NON_PACEMAKER_SITES,
    MeshRule,
    mesh_to_findings,
)
from xrg.data.findings.reconcile import TEXT_ADDED_KINDS, side_disagreements, text_corrections, text_sides
from xrg.data.findings.schema import (
    FINDING_KINDS,
    KIND_ATTRIBUTES,
    SEVERITIES,
    SEVERITY_SCALE,
    SIDES,
    ZONES,
    Finding,
    findings_from_json,
    findings_to_json,
    merge_findings,
    multi_hot,
    positive,
)

__all__ = [
    # schema
    "FINDING_KINDS",
    "SIDES",
    "ZONES",
    "SEVERITIES",
    "SEVERITY_SCALE",
    "Finding",
    "positive",
    "multi_hot",
    "findings_to_json",
    "findings_from_json",
    "KIND_ATTRIBUTES",
    "merge_findings",
    # source 1: MeSH
    "MESH_SIDES",
    "MESH_ZONES",
    "MESH_IMPLIED_SIDES",
    "MESH_SEVERITIES",
    "MESH_NO_FINDING",
    "NON_LUNG_SITES",
    "NON_PACEMAKER_SITES",
    "MeshRule",
    "MESH_RULES",
    "MESH_CALCIFIED_PARTNER_HEADS",
    "mesh_to_findings",
    # source 2: the text labeller
    "TEXT_SYNONYMS",
    "TEXT_NOT_FINDINGS",
    "TEXT_STATEMENTS",
    "TEXT_ABSENCES",
    "NEGATION_PRE",
    "NEGATION_POST",
    "NEGATION_PSEUDO",
    "NEGATION_TERMINATORS",
    "NEGATION_WINDOW",
    "HYPOTHETICAL",
    "HYPOTHETICAL_TERMINATORS",
    "TEXT_RECLASSIFY",
    "NON_LUNG_CONTEXT",
    "LUNG_CONTEXT",
    "SIDE_WORDS",
    "ZONE_WORDS",
    "SEVERITY_WORDS",
    "IMPLIED_BY_MENTION",
    "label_text",
    # MeSH corrected by the text
    "TEXT_ADDED_KINDS",
    "text_sides",
    "side_disagreements",
    "text_corrections",
    # agreement and text from findings
    "agreement",
    "openi_agreement",
    "describe_findings",
]
