"""Model monitoring: drift, data quality, model quality and system signals, reports, alerts."""
