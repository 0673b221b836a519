"""Decision: from findings to a verdict (detection lives in checks/)."""
