"""The exact response cache (issue 21): keys, directives, stores and stream replay, as pure parts the route stage
uses."""
