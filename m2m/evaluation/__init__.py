"""Evaluation: Table 1 metrics per n-th generated image (paper sections 7.2, 8.4) and the consistency
scores that are exact on procedural data (MIS sets, novel-view and procedure fixtures)."""
