"""Pipeline stages: each one a unit with a fingerprint, atomic outputs and ``_SUCCESS.json`` written last."""
