"""Alerts: conditions measured in the database (conditions), their state machine shared by every
instance (state), the message text (message), getting messages out once (delivery) through a
Signal gateway (channels.signal), and the thread that runs it all beside a daemon (alerter)."""
