"""Raw-dataset contracts: image I/O, dataset.json, case listing and integrity checks."""
