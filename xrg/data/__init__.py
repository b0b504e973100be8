"""Data: reports, structured findings, the CT phantom renderer, dataset builds and loaders."""
