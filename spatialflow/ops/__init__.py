"""User-facing operations: each builds a lazy result; none touches a store."""
