"""Data sources and the dataset format: generated styles (clean, hard), folders of your own
labeled images, and the calib / val / eval splits every later stage reads."""
