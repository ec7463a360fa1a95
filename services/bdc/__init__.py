"""Benefit Delivery Centre: claim receipt, evidence and clearance, claim status
for Jobcentres, and AACT per BDC and month."""
