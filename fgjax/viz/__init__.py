"""`python -m fgjax.viz.{rationale,heatmap,report}`, kept working: they run `fgjax rationale`,
`fgjax heatmap` and `fgjax report` (fgjax/cli/)."""
