"""Lethe: an inference-time unlearning gateway for language models.

One installed package whose layers each live in a top-level folder of the repository
(mapped in ``pyproject.toml``) and only point down:

    lethe.classifier  <-  lethe.runtime  <-  lethe.training  <-  lethe.service
                                                                     ^
                                   lethe.benchmarks, tests  ---------'

``lethe.cli`` is the command line that ties the layers' sub-commands together.
"""

__version__ = "0.2.0"
