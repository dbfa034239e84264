"""The code location's Dagster objects, by domain; ``dg.load_from_defs_folder`` loads them all."""
