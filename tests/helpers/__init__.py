"""Shared test helpers (guest trees and the joined agent, drives, the fuzz suite)."""
