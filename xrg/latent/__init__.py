"""Latent-space tools of the unconditional PGGAN: class optimisation (:mod:`xrg.latent.search`)."""
