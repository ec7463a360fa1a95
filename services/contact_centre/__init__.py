"""Contact Centre: claim intake with JP markers, and the live JP process report."""
