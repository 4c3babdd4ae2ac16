"""The differential count, the review that learns from its reviewer, and its report."""
