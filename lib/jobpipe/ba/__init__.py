"""The Bundesagentur für Arbeit APIs (Jobsuche, BERUFENET): the HTTP client (client) and the one
module that knows their wire format (wire)."""
