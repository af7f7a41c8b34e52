"""All knowledge of Kick: names, events, the REST client and the Pusher client."""
