"""The Faust side of meterwatch: the app, its topics and tables, thin agents, HTTP views."""
