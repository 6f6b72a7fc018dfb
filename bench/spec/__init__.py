"""What a sweep runs: the sweep file's schema and presets (``config``) and the cells it expands into
(``cells``)."""
