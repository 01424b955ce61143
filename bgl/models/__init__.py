"""bgl.models"""
