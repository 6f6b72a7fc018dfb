"""Sequence models compared by titans-bench: ``modules`` holds the building blocks every family shares
(Titans and the baselines alike), ``titans`` the Titans memory and its four architectures."""
