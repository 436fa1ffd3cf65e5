"""Select-N (arXiv 2502.08182): the offline stage (`performance_record`, `record_measured`) beside the online
controller (`controller`, `admission`) and the per-bus coordinator (`coordinator`)."""
