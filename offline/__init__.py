"""Files: transcription, dataset preparation, training and evaluation."""
