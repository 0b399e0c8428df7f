"""Analysis: reports (tables, figures, report.md) read from run folders."""
