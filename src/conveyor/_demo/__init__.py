"""``conveyor demo``: the library's patterns run live on real work.

Only the command line loads it. It may import any other part of conveyor; nothing in
the library imports it.
"""
