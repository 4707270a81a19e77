"""Products of a finished round: the report (:mod:`.report`), exports to other formats (:mod:`.export`) and the
evaluation of any checkpoint on a campaign's splits (:mod:`.evaluation`). They read committed round outputs through
:mod:`engine.stored` and never run a stage."""
