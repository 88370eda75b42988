"""What the registry decides: deploys, placement, rollback, services, host loss."""
