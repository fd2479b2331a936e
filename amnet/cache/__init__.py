"""The HDF5 feature cache: the contract between the two stages. Stage one (`amnet.extract`)
writes it, stage two (`amnet.head`) reads it; neither imports the other, both import this.

- `schema`: the format (datasets, attributes, which settings make two files compatible), opening
  a file with one-line errors, finite-row checks;
- `writer`: create a file with every chunk allocated, write rows in place, record failures;
- `reader`: `FeatureCache`, read-only access by name;
- `ops`: `info`, `verify`, `merge`, `relist` (the `amnet-cache` verbs);
- `repair`: salvage the complete rows of a damaged or truncated file.
"""
