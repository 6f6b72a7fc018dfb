"""Reading stored results: statistics, run comparison (``compare``), and the markdown reports and plots
(``report``, ``report_accuracy``, ``validation_report``), from stored files only."""
