"""The consumer role (DRIM-M): retrieving images from another centre's Source DRIMbox."""
