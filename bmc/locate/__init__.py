"""Finding the cells of a whole microscope field and counting them (``bmc locate``)."""
