"""Pictures of what a trained model looks at (command-line entry points)."""
