package kubesource

// Log field names.
const fieldResource = "resource"
