"""Reading stored results: statistics, ``compare``, the report and its sections, the backend check's page;
from stored files only."""
