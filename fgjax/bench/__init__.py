"""One table for all five methods (`fgjax table`): the cells (method x label regime), the
presets (backbone, image size, budget, data), the CUB-100 manifest, the summary (mean +- std
over seeds, a paired comparison, CSV and a figure)."""
