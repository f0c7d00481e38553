#!/usr/bin/env bash
# Turns `pip install`'s output (on stdin) into progress: a line per package it collects, then
# how many it installed. Everything else pip says is left out (its errors go to stderr, untouched).
awk '
  /^Collecting / { print "  " $2; fflush() }
  /^Successfully installed / { print "  installed " NF - 2 " packages"; fflush() }
'
