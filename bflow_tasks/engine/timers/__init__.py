"""Work that time starts: SLA scans, escalation, reminders, archiving, Beat job slots."""
