"""One alarm per subject on the event rows, compiled (engine.fold.kernels) over a table
of arrays (engine.fold.table); engine.per_subject is the same fold in Python."""
