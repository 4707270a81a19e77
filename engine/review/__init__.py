"""People in the loop (docs/review.md): which faces to ask about (:mod:`.rules`), Label Studio's formats both ways
(:mod:`.labelstudio`), and the committed answers (:mod:`.answers`). The stages that use them live in
engine/stages/review.py; nothing here imports a stage."""
