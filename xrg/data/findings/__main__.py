"""``python -m xrg.data.findings``: agreement of the two sources on the real Open-i reports."""

from xrg.data.findings import openi_agreement
from xrg.data.reports import load_openi_reports

if __name__ == "__main__":
    table, unmapped = openi_agreement(load_openi_reports().reports)
    print(table.round(3).to_string())
    print("unmapped MeSH heads:", ", ".join(f"{k} {v}" for k, v in unmapped.most_common(20)))
