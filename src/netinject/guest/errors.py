"""The agent's exceptions (a leaf module: every other guest module may raise them)."""


class AgentError(Exception):
    """A reason to step aside and leave the image's own configuration in place."""


class NotOnDrive(AgentError):
    """A directory the agent looked for is not on the drive."""


class NoPayload(AgentError):
    """The drive carries no netinject payload for this instance (not an error: the image
    keeps its DHCP configuration)."""
