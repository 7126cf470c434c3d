"""Synthetic OR devices for the demo and the tests: a video test pattern carrying its frame
number and capture time, a patient monitor and an optical tracker."""
