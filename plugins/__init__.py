"""Stage contracts (:mod:`.contracts`), plugin discovery (:mod:`.registry`) and the built-in
implementations, one sub-package per stage."""
