"""What a run shows a person: selection files and galleries, saliency explanations,
evaluation reports and classification metrics."""
