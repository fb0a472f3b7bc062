"""Task modules the task tests load into node workers."""
