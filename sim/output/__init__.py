"""What the commands write: the run folder (`run_folder`) and the merged Chrome/Perfetto trace
(`chrome_trace`)."""
