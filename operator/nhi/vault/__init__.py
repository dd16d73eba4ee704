"""nhi.vault"""
