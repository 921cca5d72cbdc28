"""Where a model's weights come from and how they are read: the checkpoint formats (:mod:`.formats`, one module per
format), the resolver and loader (:mod:`.checkpoints`, :mod:`.modelfile`), the Hugging Face Hub and torch hub
(:mod:`.hub`), the zoo of packaged models (:mod:`.zoo`, :mod:`.zoo_package`), deltas to a base model
(:mod:`.delta`) and the file checks they share (:mod:`.filecheck`, :mod:`.sidecar`). What a model *is* (its
architecture, the Inspector, registers) lives one level up, in :mod:`vitreg.models`."""
